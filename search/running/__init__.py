"""Running a study: the driver, one worker's loop, the multi-process supervisor, the stop flag."""
