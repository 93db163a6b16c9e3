"""The HTTP API (FastAPI): the gate for product services, the usage view for owners and
members, owner-only controls, and the Usage page."""
