from nnunet_cl.tools.cli import main

if __name__ == "__main__":
    main()
