# mailroute_setup SYSUSERS_CONF TMPFILES_CONF MAILROUTECTL KEY_FILE
#
# Creates what the daemon needs on the running system: the mailroute user and group, the
# directories with their owners and modes (/etc/mailroute 0750 root:mailroute, its config
# 0640 root:mailroute, /var/lib/mailroute 0770 mailroute:mailroute, …) and the password key
# (0600 root:root) if there is none. The sysusers.d and tmpfiles.d files are the one source
# of those names and modes. Safe to run again; it never replaces a key.
#
# POSIX sh, run as root. Shared by `make install` (sourced) and the Debian postinst (inlined
# when the package is built, where the marker #MAILROUTE_SETUP# stands).
mailroute_setup() {
    _sysusers=$1 _tmpfiles=$2 _ctl=$3 _key=$4
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers "$_sysusers"
    else
        # No systemd tools (a container, say): the same group and user as the sysusers file.
        getent group mailroute >/dev/null || groupadd --system mailroute
        getent passwd mailroute >/dev/null || useradd --system --gid mailroute \
            --home-dir /var/lib/mailroute --no-create-home --shell /usr/sbin/nologin \
            --comment "Mailroute delivery daemon" mailroute
    fi
    if command -v systemd-tmpfiles >/dev/null 2>&1; then
        systemd-tmpfiles --create "$_tmpfiles"
    else
        # The two line types the tmpfiles file uses, applied as systemd-tmpfiles --create does.
        while read -r _type _path _mode _user _group _rest; do
            case $_type in
                d) mkdir -p "$_path"; chown "$_user:$_group" "$_path"; chmod "$_mode" "$_path" ;;
                z) if [ -e "$_path" ]; then chown "$_user:$_group" "$_path"; chmod "$_mode" "$_path"; fi ;;
            esac
        done < "$_tmpfiles"
    fi
    if [ ! -e "$_key" ]; then
        # O_EXCL and mode 0600 inside; root:root because root runs this. systemd hands it to
        # the daemon as the credential mailroute.key (LoadCredential=).
        "$_ctl" key generate --output "$_key" >/dev/null
        echo "mailroute: created the password-encryption key $_key (0600 root:root)"
    fi
}
