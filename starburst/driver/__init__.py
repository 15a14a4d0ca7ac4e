"""The driver's side of the wire: finding, starting and stopping a head (``process``) and the
session with it (``client``). The public API (``starburst.api``) sits on top of these."""
