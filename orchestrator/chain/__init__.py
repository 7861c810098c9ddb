"""What only `run` needs: the budget and its arithmetic, the run ledger (one run per workspace
at a time), and which studies a run trains and votes with.
"""
