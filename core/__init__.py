"""The foundation every layer may import: settings, logging, ids and times, the error
types every layer raises. It imports nothing else of Herald's."""
