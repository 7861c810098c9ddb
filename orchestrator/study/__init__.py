"""What a Tune study needs besides Ray Tune: the pins that make a rerun train the same thing,
the search's first trials, the progress table, and the tracking-outage record.
"""
