"""HTTP layer: schemas, dependencies and one router per resource."""
