"""Operations: the metrics and health HTTP endpoint."""
