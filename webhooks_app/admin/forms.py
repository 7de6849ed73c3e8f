"""The login form; other admin forms are plain HTML posts checked by CSRFProtect."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import InputRequired, Length


class LoginForm(FlaskForm):  # type: ignore[misc]
    username = StringField("Username", validators=[InputRequired(), Length(max=255)])
    password = PasswordField("Password", validators=[InputRequired(), Length(max=1024)])
