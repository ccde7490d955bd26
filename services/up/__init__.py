"""`intentflow up`: the whole system on one machine, embedded servers where nothing is configured."""
