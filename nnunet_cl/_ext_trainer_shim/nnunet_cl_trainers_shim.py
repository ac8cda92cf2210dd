# nnU-Net's nnUNet_extTrainer points at this folder. nnU-Net imports this module by its bare name and
# purges it from sys.modules afterwards; the classes themselves live in (and stay in) nnunet_cl.trainers.
from nnunet_cl.trainers import *  # noqa: F401,F403
