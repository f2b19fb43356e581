"""Soaks you can quote: ``python -m soak.powercut`` and ``python -m soak.rogue``
(``make soak`` runs both); see docs/reliability.md."""
