INSERT INTO widgets (name) VALUES ('first');
