"""Topic routing: templates with named parameters, a route table, a middleware chain."""
