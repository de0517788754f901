"""What the Discord and Telegram tests share: running a frontend, and each platform's people
and places. The fixtures built on them are in tests/conftest.py."""
