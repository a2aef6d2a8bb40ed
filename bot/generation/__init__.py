"""Text generation: the engine interface, the engines, and the queue that shares them fairly."""
