"""The pieces of bench/run: setup, processes, the queue, the engine, its peers, the measurements, the report."""
