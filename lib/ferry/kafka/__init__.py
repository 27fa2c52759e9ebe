"""The Kafka side: reading a topic through one small interface (two clients behind it), the
broker's traits, consumer groups, the producers' partitioner, and fencing writers off a topic."""
