"""The fault proxy: a TCP proxy between an MQTT client and its broker that can cut, stall or slow the link, with its control protocol and CLI."""
