"""What every frontend shares, so that a platform package only has to translate.

The texts people read, the command set, the reply workflow, the cooldowns around it and the
splitting of long replies. Each platform package (``bots.discord``, ``bots.telegram``,
``bots.terminal``) only translates its events into these and delivers what they produce.
"""
