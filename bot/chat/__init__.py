"""Chat behaviour that does not need Discord: when to reply, how to split and name replies, rate limits."""
