from nnunet_cl.cli import main

if __name__ == "__main__":
    main()
