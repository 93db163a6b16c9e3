"""The ClickHouse projection: schema migrations, the exactly-once sink and the dashboard
queries. The same code runs on an embedded chDB store or a ClickHouse server."""
