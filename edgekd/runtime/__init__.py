"""Device side: load and run exported artifacts. numpy + a runtime only, never torch."""
