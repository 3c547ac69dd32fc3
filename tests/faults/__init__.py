"""Bad input and real faults: each test builds a malformed file or causes a fault, and fails if the
harness's guarantee breaks (a clear error naming the file and the problem, or a counted skip; never a
library traceback, a hang, or partial output that looks complete)."""
