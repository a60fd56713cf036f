"""Reading what agents did from the bus: runs, timelines, the HTML report, `serve`, progress lines."""
