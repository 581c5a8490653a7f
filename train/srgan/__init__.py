"""SRGAN/SRResNet training on Ray Train (``pixelfleet train srgan``)."""
