"""Web dashboard: a stdlib HTTP server and one static page that polls stats.json."""
