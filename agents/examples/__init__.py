"""Examples apart from the library: the demo, the bus tour, the example chain agents and configs."""
