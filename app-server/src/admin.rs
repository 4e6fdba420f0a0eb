//! The operator commands: `migrate` (create the database if needed, apply
//! every service's migrations) and `create-admin` (the first admin,
//! password from stdin).

use std::io::{BufRead, IsTerminal};

use dsf_sql::migrate::{Migration, Report};
use dsf_sql::password::{self, Cost};
use dsf_sql::{validate, Db, DbConfig, Role, User};

use crate::error::Error;

/// Creates the database named in `cfg` if it does not exist, then applies
/// every migration of `sets` (by namespace) not yet applied.
pub fn migrate(cfg: &DbConfig, sets: &[(&str, &[Migration])]) -> Result<Vec<Report>, Error> {
    dsf_sql::db::ensure_database(cfg)?;
    let db = Db::connect(cfg)?;
    Ok(dsf_sql::migrate::apply_all(&db, sets)?)
}

/// Creates user `name` with role admin; `conflict` if the name is taken.
pub fn create_admin(db: &Db, name: &str, password: &str, cost: Cost) -> Result<User, Error> {
    validate::name("name", name)?;
    validate::password(password)?;
    let hash = password::hash_with(password, cost)?;
    let user = db.users().create(name, &hash, Role::Admin)?;
    db.audit().record(&dsf_sql::audit::Record {
        actor: None,
        node: "command line",
        action: "user.create",
        subject: &user.name,
        detail: Some(r#"{"role":"admin"}"#),
    })?;
    Ok(user)
}

/// Reads a password: prompted without echo on a terminal, else the first
/// line of stdin (for scripts: `echo "$PW" | app-server create-admin …`).
pub fn read_password() -> Result<String, Error> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("password for the new admin: ")
            .map_err(|e| Error::Password(e.to_string()))?;
        let again =
            rpassword::prompt_password("again: ").map_err(|e| Error::Password(e.to_string()))?;
        if first != again {
            return Err(Error::Password("the two entries differ".into()));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Error::Password(format!("cannot read stdin: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        return Err(Error::Password(
            "none given: write it on stdin, e.g. `echo \"$PW\" | app-server create-admin --db URL --name NAME`"
                .into(),
        ));
    }
    Ok(password)
}
