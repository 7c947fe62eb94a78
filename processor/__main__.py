"""`python -m processor`: run the processor server (same as `auditflow-processor`)."""

from processor.server import main

main()
