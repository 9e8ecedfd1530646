"""Two modules with an event class of the same name, for the AsyncAPI export's names."""
