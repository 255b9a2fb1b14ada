# fieldbox boot script (U-Boot hush), compiled to boot.scr by
# provisioning/fieldbox_host/bootfiles.py (mkimage -A arm64 -T script -C none).
# Runs unchanged under U-Boot qemu_arm64 (u-boot-qemu) and rpi_arm64 (u-boot-rpi).
#
# A/B slot state: two U-Boot env images on this FAT partition, fbstate.0 and
# fbstate.1 (16 KiB, CRC-checked by `env import -c`). Format and rules have ONE
# definition, app/fieldbox/bootenv.py; this script applies the same rules:
#   read:  of the valid copies take the higher fb_gen (tie: copy 0);
#          none valid: slot A on trial.
#   count: on trial, fb_count + 1; past fb_limit, switch to the other slot.
#   write: fb_gen + 1 into the copy NOT read, in place (fatwrite, same size).
# Numbers are hexadecimal (setexpr/itest work in hex).
# @FB_PARTUUID_A@, @FB_PARTUUID_B@, @FB_EXTRA_ARGS@ are filled in at build time.
# The kernel learns its slot (fieldbox.slot=A|B) and whether this boot is a counted
# trial (fieldbox.trial=1: the watchdog feeder then stops at its deadline).

setenv fb_uuid_A @FB_PARTUUID_A@
setenv fb_uuid_B @FB_PARTUUID_B@
setenv fb_size 0x4000
if test -z "${distro_bootpart}"; then setenv distro_bootpart 1; fi
setenv fb_buf0 ${kernel_addr_r}
setenv fb_buf1 ${ramdisk_addr_r}
setexpr fb_out ${kernel_addr_r} + 0x100000

# Import the copy at ${fb_buf}; fails on a bad CRC or a missing/ill-formed variable.
# (`env import` with a variable list does not delete absent ones: clear first.)
setenv fb_clear 'setenv fb_format; setenv fb_gen; setenv fb_slot; setenv fb_trial; setenv fb_count; setenv fb_limit; setenv fb_good_A; setenv fb_good_B'
setenv fb_import 'run fb_clear; env import -c ${fb_buf} ${fb_size} fb_count fb_format fb_gen fb_good_A fb_good_B fb_limit fb_slot fb_trial && test "${fb_format}" = 1 && test -n "${fb_gen}" && test -n "${fb_count}" && test -n "${fb_limit}" && test "${fb_slot}" = A -o "${fb_slot}" = B && test "${fb_trial}" = 0 -o "${fb_trial}" = 1 && test "${fb_good_A}" = 0 -o "${fb_good_A}" = 1 && test "${fb_good_B}" = 0 -o "${fb_good_B}" = 1'

setenv fb_ok0 0
setenv fb_buf ${fb_buf0}
if load ${devtype} ${devnum}:${distro_bootpart} ${fb_buf0} fbstate.0 && itest ${filesize} == ${fb_size} && run fb_import; then setenv fb_ok0 1; setenv fb_g0 ${fb_gen}; else echo "fieldbox: fbstate.0 is missing or invalid"; fi
setenv fb_ok1 0
setenv fb_buf ${fb_buf1}
if load ${devtype} ${devnum}:${distro_bootpart} ${fb_buf1} fbstate.1 && itest ${filesize} == ${fb_size} && run fb_import; then setenv fb_ok1 1; setenv fb_g1 ${fb_gen}; else echo "fieldbox: fbstate.1 is missing or invalid"; fi

setenv fb_cur none
if test ${fb_ok0} = 1; then setenv fb_cur 0; fi
if test ${fb_ok1} = 1; then
  if test ${fb_ok0} = 0; then setenv fb_cur 1; elif itest ${fb_g1} > ${fb_g0}; then setenv fb_cur 1; fi
fi

if test ${fb_cur} = 0; then
  setenv fb_buf ${fb_buf0}; run fb_import; setenv fb_target 1
elif test ${fb_cur} = 1; then
  setenv fb_buf ${fb_buf1}; run fb_import; setenv fb_target 0
else
  echo "fieldbox: no valid slot state: trying slot A on trial"
  run fb_clear
  setenv fb_format 1; setenv fb_gen 0; setenv fb_slot A; setenv fb_trial 1; setenv fb_count 0; setenv fb_limit 3; setenv fb_good_A 0; setenv fb_good_B 0
  setenv fb_target 0
fi
echo "fieldbox: state fbstate.${fb_cur} generation ${fb_gen}: slot ${fb_slot} trial ${fb_trial} count ${fb_count} limit ${fb_limit}"

# Count a trial boot; past the limit, roll back to the other slot.
setenv fb_write 0
if test "${fb_trial}" = 1; then
  setexpr fb_count ${fb_count} + 1
  setenv fb_write 1
  if itest ${fb_count} > ${fb_limit}; then
    echo "fieldbox: slot ${fb_slot} was not marked good within ${fb_limit} boots: rolling back"
    setenv fb_good_${fb_slot} 0
    if test "${fb_slot}" = A; then setenv fb_slot B; else setenv fb_slot A; fi
    setenv fb_trial 0
    setenv fb_count 0
  fi
fi

setenv fb_boot_slot ${fb_slot}
if test ${fb_write} = 1; then
  setexpr fb_gen ${fb_gen} + 1
  echo "fieldbox: writing fbstate.${fb_target} generation ${fb_gen}"
  if env export -c -s ${fb_size} ${fb_out} fb_count fb_format fb_gen fb_good_A fb_good_B fb_limit fb_slot fb_trial && fatwrite ${devtype} ${devnum}:${distro_bootpart} ${fb_out} fbstate.${fb_target} ${fb_size}; then
    echo "fieldbox: wrote fbstate.${fb_target}"
  else
    # A trial whose count cannot be kept could loop forever: boot the other slot.
    echo "fieldbox: cannot write fbstate.${fb_target}"
    if test "${fb_trial}" = 1; then
      if test "${fb_slot}" = A; then setenv fb_boot_slot B; else setenv fb_boot_slot A; fi
    fi
  fi
fi

# Device tree and console: QEMU passes its DT to U-Boot (fdtcontroladdr); the
# Pi firmware loads the board's DT at fdt_addr.
if test "${board}" = rpi; then
  setenv fb_fdt ${fdt_addr}; setenv fb_console "console=tty1 console=ttyS1,115200"
else
  setenv fb_fdt ${fdtcontroladdr}; setenv fb_console "console=ttyAMA0,115200"
fi
# Debian's arm64 vmlinuz is gzip-compressed: booti needs room to decompress it.
if test -z "${kernel_comp_addr_r}"; then setexpr kernel_comp_addr_r ${ramdisk_addr_r} + 0x4000000; setenv kernel_comp_size 0x3000000; fi

# Boot slot ${fb_try}: kernel and initramfs from that root's /boot.
setenv fb_boot 'if test "${fb_try}" = B; then setenv fb_part 3; setenv fb_uuid ${fb_uuid_B}; else setenv fb_part 2; setenv fb_uuid ${fb_uuid_A}; fi; if load ${devtype} ${devnum}:${fb_part} ${ramdisk_addr_r} /boot/initrd.img; then setenv fb_rdsize ${filesize}; if load ${devtype} ${devnum}:${fb_part} ${kernel_addr_r} /boot/vmlinuz; then if test "${fb_try}" = "${fb_slot}"; then setenv fb_t ${fb_trial}; else setenv fb_t 0; fi; setenv bootargs "root=PARTUUID=${fb_uuid} ro rootwait fieldbox.slot=${fb_try} ${fb_console} @FB_EXTRA_ARGS@ fieldbox.trial=${fb_t}"; echo "fieldbox: bootargs ${bootargs}"; echo "fieldbox: booting slot ${fb_try} count ${fb_count}"; booti ${kernel_addr_r} ${ramdisk_addr_r}:${fb_rdsize} ${fb_fdt}; fi; fi; echo "fieldbox: slot ${fb_try} did not boot"'

setenv fb_try ${fb_boot_slot}
run fb_boot
# Not persisted: if the state's slot cannot even be loaded, try the other one.
if test "${fb_boot_slot}" = A; then setenv fb_try B; else setenv fb_try A; fi
echo "fieldbox: falling back to slot ${fb_try} for this boot"
run fb_boot
echo "fieldbox: no slot could be booted: resetting"
sleep 3
reset
