"""Tools: typed tool calls and their handlers, the workspace and the RunPython tool."""
