"""fraudlite.data: transactions in and out of files (loading, column mapping, validation, day windows)
and the transaction simulator. Below ``models``; above ``features`` and ``modeldir``."""
