"""One module per `progan` command; each defines `register(subparsers)`."""
