"""The PYNQ driver of a deployed accelerator (bnnflow_driver.py) and its numpy bit packing (packing.py).

Both files are copied into every deployment package and run on the board's own Python with
only numpy and PYNQ; off the board the driver runs the design's functional model instead.
"""
