"""One run of an agent: state, context (the event log), decide, turn, loop, resume, record and replay."""
