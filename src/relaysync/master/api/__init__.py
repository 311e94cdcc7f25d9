"""The master's REST API: one module per resource; the route table is in master/app.py."""
