// sample, CPU: being written (the sampling issue).
