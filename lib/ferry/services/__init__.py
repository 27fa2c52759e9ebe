"""Embedded services and the demo: Tansu, Apache Kafka in KRaft mode and Redis/Valkey on
loopback, seed data, the traffic generator and JupyterLab."""
