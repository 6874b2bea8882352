"""The MQTT side: gmqtt transport with reconnect, deferred acknowledgements."""
