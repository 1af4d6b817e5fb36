"""``mode="auto"``: a pool that measures each function, then runs it where it is fastest."""
