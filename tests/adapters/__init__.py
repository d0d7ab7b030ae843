"""The contract every queue adapter passes, with a real worker of each queue."""
