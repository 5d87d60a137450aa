"""The program: command line, options, remotes and mount files, the daemon, assembling a mount,
the status/flush client and systemd notification."""
