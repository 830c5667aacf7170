"""One user endpoint process: the interchange (the pure core), the adapter that runs it on AMQP
and an engine, the journal, idle shutdown and the fault hook."""
