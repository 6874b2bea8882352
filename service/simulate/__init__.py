"""Device simulator: a fleet of fake devices publishing status, telemetry and relay traffic over MQTT.

`python -m service.simulate --help`. The traffic is a pure function of the options and `--seed`
(`fleet.py`), so a test can assert exactly what reached the database; `publisher.py` sends it.
"""
