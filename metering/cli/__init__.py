"""Command-line entry points (`metering`, `billing`), thin shells over the library."""
