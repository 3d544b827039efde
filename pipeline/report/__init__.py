"""What `report` and `inspect` read and draw: the runs and stores of a workspace, the measures (PGR, mean and spread, calibration), the figures."""
