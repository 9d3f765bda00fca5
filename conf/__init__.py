# The configs as a package (dropsweep.conf once installed), so that Hydra finds them as pkg://dropsweep.conf.
