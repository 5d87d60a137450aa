"""Layer 5: faults. The daemon killed with SIGKILL, the server stopped and restarted."""
