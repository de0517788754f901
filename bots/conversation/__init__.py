"""What every frontend shares: the texts people read, the command set, the reply workflow.

Each platform package (``bots.discord``, ``bots.telegram``, ``bots.terminal``) only
translates its events into these and delivers what they produce.
"""
