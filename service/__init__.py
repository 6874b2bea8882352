"""AutoCore Monitor: MQTT device fleet -> PostgreSQL, acknowledged only after commit."""
