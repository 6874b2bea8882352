"""Real-service helpers for the tests: a Mosquitto of our own, a cuttable TCP proxy, a publisher."""
